"""The interactive API documentation (`/docs`), served without any third-party origin."""
