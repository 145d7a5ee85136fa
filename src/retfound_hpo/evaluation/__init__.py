"""evaluate-cross-dataset's concept, and the commands that read its outputs: compare, predict."""
