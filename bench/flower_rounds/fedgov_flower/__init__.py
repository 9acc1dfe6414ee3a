"""The Flower side of bench/rounds.py."""
