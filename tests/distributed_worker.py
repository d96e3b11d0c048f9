"""Entry point for torchrun in tests/test_distributed.py: the real ``cnnlab`` CLI, plus an audit
hook that records every file this process opens for writing or renames, so the test can check
that only rank 0 writes.  Usage: ``torchrun ... distributed_worker.py LOG_DIR <cnnlab args>``."""

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> int:
    log_dir, argv = sys.argv[1], sys.argv[2:]
    written: list[str] = []
    recording = [True]

    def hook(event, args):
        if not recording[0]:
            return
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS:
                written.append(os.path.abspath(os.fsdecode(args[0])))
        elif event in ("os.rename", "os.replace"):
            written.append(os.path.abspath(os.fsdecode(args[1])))

    sys.addaudithook(hook)
    from cnnlab.cli.main import main as cnnlab_main

    try:
        return cnnlab_main(argv)
    finally:
        recording[0] = False
        with open(os.path.join(log_dir, f"writes-rank{os.environ['RANK']}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(written))


if __name__ == "__main__":
    status = main()
    from cnnlab import distributed

    distributed.end_process(status)   # as `python -m cnnlab` ends: before finalization (see end_process)
    raise SystemExit(status)
