"""`iclgd list`: the experiments, the paper figure each reproduces, and what it shows."""


def add_arguments(parser):
    pass


def run(args):
    from iclgd.experiments import EXPERIMENTS
    for name, (_, figure, text) in EXPERIMENTS.items():
        print(f"{name:7s} {figure:16s} {text}")
    return 0
