"""The embedded demo: synthetic fundus photographs from two cameras, written in public layouts."""
