"""The kinds of forget sets an audit runs on, in display order, with their names in tables and in sentences."""

SET_KINDS = ("worst_case", "lowest_loss", "heuristic", "memorization", "exposure", "random", "given")  # display order
KIND_LABELS = {"worst_case": "worst-case", "lowest_loss": "lowest-loss", "heuristic": "heuristic",
               "memorization": "memorization", "exposure": "exposure", "random": "random", "given": "given"}
KIND_NAMES = {"worst_case": "searched worst-case", "lowest_loss": "lowest-loss heuristic",
              "heuristic": "lowest-objective heuristic", "memorization": "memorization heuristic",
              "exposure": "exposure heuristic", "random": "random", "given": "given"}  # in sentences
