"""Sendspin roles beside the player: controller, metadata and color (``server/state`` objects)."""
