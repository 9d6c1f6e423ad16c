"""paced"""
