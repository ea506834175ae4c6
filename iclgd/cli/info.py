"""`iclgd info`: versions of the project and its dependencies, and which backends can run."""
from iclgd.versions import versions


def add_arguments(parser):
    pass


def run(args):
    from kernels import availability, backend_names
    print("versions:")
    for k, v in versions().items():
        print(f"  {k:12s} {v}")
    print("backends:")
    for name in backend_names():
        ok, reason = availability(name)
        print(f"  {name:12s} {'available' if ok else 'unavailable'}: {reason}")
    return 0
