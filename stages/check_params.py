"""Stage check-params: the whole params.yaml validated whenever the file changes, even where no
other stage would rerun (an unknown top-level key, a misspelt section that no stage reads)."""

from retfound_hpo.core.params_yaml import main

if __name__ == "__main__":
    main(["params.yaml"])
