"""run.py --jobs: the seeds and recipe variants of the toy experiment as parallel child
processes of run.py, after the shared stage."""
import os
import subprocess
import sys
import time


class Jobs:
    """Per-seed (and per-variant) runs as child processes of run.py (``script``), at most --jobs at a time,
    each writing its sweeps to the work folder's cache (read back with reuse) and its log to
    work/jobs/<task>.log; ``log`` prints the progress. A failed child stops the run with its
    log's tail; an interrupt stops the children."""

    def __init__(self, tasks, args, work, script: str, log=print):
        self.script, self.log, self.pending, self.running, self.done = script, log, list(tasks), {}, []
        self.common = ["--work", work, "--threads", str(args.threads), "--seed-only"] + (["--quick"] if args.quick else [])
        self.common += ["--reuse"] if args.reuse else []
        self.jobs, self.threads, self.logs = args.jobs, str(args.threads), os.path.join(work, "jobs")
        os.makedirs(self.logs, exist_ok=True)
        self._fill()

    def _fill(self):
        while self.pending and len(self.running) < self.jobs:
            name, extra = self.pending.pop(0)
            path = os.path.join(self.logs, name.replace(" ", "_") + ".log")
            out = open(path, "w")
            env = {**os.environ, "OMP_NUM_THREADS": self.threads}
            proc = subprocess.Popen([sys.executable, self.script, *extra, *self.common],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
            self.running[name] = (proc, out, path, time.time())
            self.log(f"{name}: started in a child process (log {path})")

    def wait(self):
        try:
            while self.running:
                for name, (proc, out, path, t0) in list(self.running.items()):
                    if proc.poll() is None:
                        continue
                    out.close()
                    del self.running[name]
                    if proc.returncode != 0:
                        with open(path) as f:
                            tail = "".join(f.readlines()[-30:])
                        raise RuntimeError(f"{name} failed (exit {proc.returncode}); the end of {path}:\n{tail}")
                    self.log(f"{name}: done in {(time.time() - t0) / 60:.1f} min")
                    self.done.append(name)
                self._fill()
                time.sleep(2)
        finally:
            for proc, out, _, _ in self.running.values():
                proc.terminate()
                out.close()
