"""Fixtures shared by every test module. Feature-specific fixtures live beside their tests."""
