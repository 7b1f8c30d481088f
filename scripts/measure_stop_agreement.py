"""What the ranks' agreement to stop costs per step (`GracefulStop.should_stop`: one all-reduce
of one number on a gloo group): two processes on this machine, the median over rounds of N calls.

    python scripts/measure_stop_agreement.py [--calls 2000] [--ranks 2]
"""

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scops_fast.train.distributed import ProcessInfo
from scops_fast.train.stopping import GracefulStop


def _rank(rank: int, world: int, port: int, calls: int, rounds: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    proc = ProcessInfo(rank, world, torch.device("cpu"))
    stopping = GracefulStop()
    try:
        for _ in range(100):  # warm-up
            stopping.should_stop(proc)
        per_call = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                stopping.should_stop(proc)
            per_call.append((time.perf_counter() - start) / calls)
        if rank == 0:
            print(
                f"should_stop across {world} processes (gloo, this machine): median "
                f"{statistics.median(per_call) * 1e3:.3f} ms per step over {rounds} rounds of "
                f"{calls} calls (fastest round {min(per_call) * 1e3:.3f} ms)"
            )
    finally:
        stopping.restore(deliver=False)
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _rank,
        args=(args.ranks, port, args.calls, args.rounds),
        nprocs=args.ranks,
        start_method="spawn",
    )


if __name__ == "__main__":
    main()
