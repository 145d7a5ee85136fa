"""Below everything: params sections and their checks, errors, atomic files, the stage runner."""
