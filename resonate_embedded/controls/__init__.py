"""Physical controls: Linux input devices (buttons, rotary encoder, IR) turned into actions."""
