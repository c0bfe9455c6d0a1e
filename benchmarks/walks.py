"""`rxrec bench walks`: our walk generator vs PecanPy (PreCompFirstOrder) on one weighted graph.

Both run in their own process (PecanPy in its numpy<2 venv, infra/pecanpy/setup.sh) with the same
NUMBA_NUM_THREADS, on the same edge list; each reports its walk time (JIT warmed up first), its
steps/s and the peak RSS of its process sampled during preprocessing + walking. Every step of
both is checked against the graph (zero invalid transitions). Then gensim Word2Vec and our
Meta-Prod2Vec train on the same walks, for words/s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

# Shared by both workers: peak RSS of this process, sampled every 5 ms from a thread.
_MONITOR = r'''
import threading, time, resource, psutil
class Peak:
    def __init__(self):
        self.proc = psutil.Process(); self.peak = self.proc.memory_info().rss; self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True); self.thread.start()
    def run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss); time.sleep(0.005)
    def done(self):
        self.stop = True; self.thread.join(); return max(self.peak, self.proc.memory_info().rss)
'''

_OURS = _MONITOR + r'''
import json, sys, numpy as np, scipy.sparse as sp
from pipelines.graph.walks import WalkSampler
edges, n_walks_per_node, length, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
e = np.load(edges)
n = int(e["n"])
g = sp.coo_matrix((np.r_[e["w"], e["w"]], (np.r_[e["u"], e["v"]], np.r_[e["v"], e["u"]])), shape=(n, n)).tocsr()
del e
tiny = WalkSampler(sp.csr_matrix(np.array([[0, 1.0], [1.0, 0]])))
tiny.walk(np.array([0, 1]), 3, 0)  # JIT warm-up (cached compile), not timed
rss_before = psutil.Process().memory_info().rss
peak = Peak()
t = time.perf_counter()
sampler = WalkSampler(g)
prep_s = time.perf_counter() - t
starts = np.tile(np.arange(n, dtype=np.int64), n_walks_per_node)
np.random.default_rng(seed).shuffle(starts)
t = time.perf_counter()
walks = sampler.walk(starts, length, seed)
walk_s = time.perf_counter() - t
peak_rss = peak.done()
np.save(out, walks)
print("RESULT=" + json.dumps({"prep_s": prep_s, "walk_s": walk_s, "walks": len(walks), "length": length,
      "rss_before_mb": rss_before / 2**20, "peak_rss_mb": peak_rss / 2**20,
      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "table_mb": sampler.nbytes / 2**20}))
'''

_PECANPY = _MONITOR + r'''
import json, sys, numpy as np
from pecanpy import pecanpy
edg, n_walks_per_node, length, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
g = pecanpy.PreCompFirstOrder(p=1, q=1, workers=int(sys.argv[6]), verbose=False, random_state=seed)
t = time.perf_counter()
g.read_edg(edg, weighted=True, directed=False)
load_s = time.perf_counter() - t
# JIT warm-up on the real graph, a handful of walkers (not timed); preprocessing is timed below.
rss_before = psutil.Process().memory_info().rss
peak = Peak()
t = time.perf_counter()
g.preprocess_transition_probs()
prep_s = time.perf_counter() - t
move_forward, has_nbrs = g.get_move_forward(), g.get_has_nbrs()
from numba_progress import ProgressBar
nodes = np.array(range(g.num_nodes), dtype=np.uint32)
with ProgressBar(total=8, disable=True) as progress:
    g._random_walks(8, length, seed, nodes[:8].copy(), has_nbrs, move_forward, progress)
starts = np.concatenate([nodes] * n_walks_per_node)
np.random.seed(seed)
np.random.shuffle(starts)
t = time.perf_counter()
with ProgressBar(total=starts.size, disable=True) as progress:
    mat = g._random_walks(starts.size, length - 1, seed, starts, has_nbrs, move_forward, progress)
walk_s = time.perf_counter() - t
peak_rss = peak.done()
ids = np.array([int(x) for x in g.nodes], dtype=np.int64)
np.save(out, ids[mat[:, :length]].astype(np.int32))
print("RESULT=" + json.dumps({"load_s": load_s, "prep_s": prep_s, "walk_s": walk_s, "walks": int(starts.size),
      "length": length, "rss_before_mb": rss_before / 2**20, "peak_rss_mb": peak_rss / 2**20,
      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "table_mb": (g.alias_j.nbytes + g.alias_q.nbytes + g.indices.nbytes + g.indptr.nbytes + g.data.nbytes) / 2**20}))
'''


def make_graph(n_nodes: int, n_edges: int, seed: int, out_dir: Path) -> tuple[Path, Path, int]:
    """Undirected weighted graph with long-tailed degrees: endpoints drawn Zipf-like, duplicates summed.

    Written twice: .npz for us, tab-separated .edg for PecanPy. Returns (npz, edg, undirected edges).
    """
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_nodes + 1) ** 0.7
    p /= p.sum()
    draw = int(n_edges * 1.15)
    u = rng.choice(n_nodes, size=draw, p=p)
    v = rng.integers(0, n_nodes, size=draw)  # one popular, one uniform endpoint: a connected long tail
    keep = u != v
    lo, hi = np.minimum(u[keep], v[keep]), np.maximum(u[keep], v[keep])
    w = rng.random(len(lo)).astype(np.float32) * 4 + 0.01
    m = sp.coo_matrix((w, (lo, hi)), shape=(n_nodes, n_nodes)).tocsr()
    m.sum_duplicates()
    m = m.tocoo()
    take = np.sort(rng.permutation(m.nnz)[:n_edges])
    uu, vv, ww = m.row[take], m.col[take], m.data[take].astype(np.float32)
    # every node gets at least one edge, so all walkers move (both tools start from every node)
    lonely = np.setdiff1d(np.arange(n_nodes), np.r_[uu, vv])
    partner = (lonely + 1 + rng.integers(0, n_nodes - 1, len(lonely))) % n_nodes
    uu, vv = np.r_[uu, lonely], np.r_[vv, partner]
    ww = np.r_[ww, np.ones(len(lonely), dtype=np.float32)]
    out_dir.mkdir(parents=True, exist_ok=True)
    npz, edg = out_dir / "graph.npz", out_dir / "graph.edg"
    np.savez(npz, u=uu, v=vv, w=ww, n=n_nodes)
    with edg.open("w") as fh:
        for a, b, c in zip(uu.tolist(), vv.tolist(), ww.tolist()):
            fh.write(f"{a}\t{b}\t{c:.6g}\n")
    return npz, edg, len(uu)


def _run_worker(python: str, script: str, args: list[str], env: dict[str, str], label: str) -> dict:
    proc = subprocess.run([python, "-c", script, *args], env=env, capture_output=True, text=True, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT=")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{label} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].split("=", 1)[1])


def run_walks_benchmark(nodes: int, edges: int, walks_per_node: int, length: int, threads: int, seed: int,
                        w2v_walks: int, pecanpy_python: str) -> dict:
    """Both generators on the same graph, validity checks, then word2vec words/s on the same walks."""
    import numpy as np
    import scipy.sparse as sp

    from pipelines.core.config import PROJECT_ROOT, MetaProd2VecSettings, Prod2VecSettings
    from pipelines.graph.walks import invalid_transitions

    work = PROJECT_ROOT / "var" / "bench-walks"
    t = time.perf_counter()
    npz, edg, n_undirected = make_graph(nodes, edges // 2, seed, work)
    graph_s = time.perf_counter() - t
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "PYTHONPATH": str(PROJECT_ROOT)}
    typer.echo(f"graph: {nodes} nodes, {2 * n_undirected} directed weighted edges ({graph_s:.1f} s); walking ...")
    common = [str(walks_per_node), str(length), str(seed)]
    ours = _run_worker(sys.executable, _OURS, [str(npz), *common, str(work / "ours.npy")], env, "our walk")
    typer.echo(f"  ours:    {ours['walk_s']:.2f} s")
    theirs = _run_worker(pecanpy_python, _PECANPY, [str(edg), *common, str(work / "pecanpy.npy"), str(threads)],
                         env, "PecanPy")
    typer.echo(f"  pecanpy: {theirs['walk_s']:.2f} s")

    e = np.load(npz)
    g = sp.coo_matrix((np.r_[e["w"], e["w"]], (np.r_[e["u"], e["v"]], np.r_[e["v"], e["u"]])),
                      shape=(nodes, nodes)).tocsr()
    result: dict = {"graph": {"nodes": nodes, "directed_edges": int(g.nnz), "walks_per_node": walks_per_node,
                              "walk_length": length, "threads": threads}}
    for name, res, path in (("ours", ours, work / "ours.npy"), ("pecanpy", theirs, work / "pecanpy.npy")):
        walks = np.load(path)
        steps = walks.shape[0] * (walks.shape[1] - 1)
        res["steps"] = int(steps)
        res["steps_per_s"] = steps / res["walk_s"]
        res["invalid_transitions"] = invalid_transitions(g, walks)
        result[name] = res
        if name == "ours":
            our_walks = walks
    result["ours_steps_per_s"] = result["ours"]["steps_per_s"]
    result["pecanpy_steps_per_s"] = result["pecanpy"]["steps_per_s"]
    result["ratio"] = result["ours_steps_per_s"] / result["pecanpy_steps_per_s"]
    result["ours_peak_rss_mb"] = result["ours"]["peak_rss_mb"]
    result["pecanpy_peak_rss_mb"] = result["pecanpy"]["peak_rss_mb"]
    result["zero_invalid_transitions"] = result["ours"]["invalid_transitions"] == 0

    # word2vec throughput on the same walks (a slice, one epoch each)
    from pipelines.embed.meta import ItemFields
    from pipelines.embed.meta_prod2vec import train_meta_prod2vec
    from pipelines.embed.prod2vec import word2vec_on_walks

    sub = our_walks[:w2v_walks] + 1  # item ids start at 1
    typer.echo(f"word2vec on {len(sub)} walks ({sub.size} words) ...")
    _, _, gensim_t = word2vec_on_walks(sub, nodes, Prod2VecSettings(dim=64, epochs=1, workers=threads), seed)
    rng = np.random.default_rng(seed)
    n_classes = 50
    cls = rng.integers(0, n_classes, nodes + 1)
    fields = ItemFields(fields=["item_id", "class"], vocab=[f"class={i}" for i in range(n_classes)],
                        indptr=np.r_[0, 0, np.arange(1, nodes + 1)].astype(np.int64),
                        value_ids=cls[1:].astype(np.int32), field_ids=np.ones(nodes, dtype=np.int32),
                        entry_weight=np.ones(nodes, dtype=np.float32))
    ms = MetaProd2VecSettings(dim=64, epochs=1, workers=threads)
    meta = train_meta_prod2vec(sub, fields, ms, seed=seed)
    result["gensim_words_per_s"] = gensim_t["word2vec_words_per_s"]
    result["meta_words_per_s"] = meta.info["words_per_s"]
    result["meta_to_gensim"] = result["meta_words_per_s"] / result["gensim_words_per_s"]
    result["word2vec_walks"] = len(sub)
    result["word2vec_note"] = ("raw walk tokens x epochs / train wall time; both sg, dim 64, window 5, negative 5, "
                               "sample 1e-3; meta (also gensim) trains the walks plus their meta copies, item id + one 50-value "
                               "meta field")
    return result


def register(bench: typer.Typer) -> None:
    @bench.command("walks")
    def walks(
        nodes: Annotated[int, typer.Option(help="items in the graph")] = 100_000,
        edges: Annotated[int, typer.Option(help="directed weighted edges (about)")] = 2_000_000,
        walks_per_node: Annotated[int, typer.Option(help="walks started from every node")] = 10,
        length: Annotated[int, typer.Option(help="nodes per walk")] = 40,
        threads: Annotated[int, typer.Option(help="NUMBA_NUM_THREADS / word2vec workers for both")] = 2,
        seed: int = 0,
        w2v_walks: Annotated[int, typer.Option(help="walks used for the words/s comparison")] = 100_000,
    ) -> None:
        """Walk generator steps/s and memory vs PecanPy; gensim vs Meta-Prod2Vec words/s."""
        from benchmarks.common import write_report
        from pipelines.core.config import PROJECT_ROOT

        venv = Path(os.environ.get("RXREC_PECANPY_VENV", PROJECT_ROOT / "var" / "venv-pecanpy"))
        setup = PROJECT_ROOT / "infra" / "pecanpy" / "setup.sh"
        if subprocess.call(["bash", str(setup)], env={**os.environ, "RXREC_PECANPY_VENV": str(venv)}) != 0:
            typer.secho(f"error: could not set up the PecanPy venv with {setup}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        r = run_walks_benchmark(nodes, edges, walks_per_node, length, threads, seed, w2v_walks,
                                str(venv / "bin" / "python"))
        md = (f"# Walk generator vs PecanPy PreCompFirstOrder ({nodes} nodes, {r['graph']['directed_edges']} "
              f"directed edges, {walks_per_node} walks/node, length {length}, {threads} threads)\n\n"
              "| | steps/s | walk s | peak RSS MB | invalid transitions |\n|---|---|---|---|---|\n"
              f"| ours | {r['ours_steps_per_s']:,.0f} | {r['ours']['walk_s']:.2f} | {r['ours_peak_rss_mb']:.0f} "
              f"| {r['ours']['invalid_transitions']} |\n"
              f"| PecanPy | {r['pecanpy_steps_per_s']:,.0f} | {r['pecanpy']['walk_s']:.2f} | "
              f"{r['pecanpy_peak_rss_mb']:.0f} | {r['pecanpy']['invalid_transitions']} |\n\n"
              f"ratio {r['ratio']:.2f}x; gensim {r['gensim_words_per_s']:,.0f} words/s, Meta-Prod2Vec "
              f"{r['meta_words_per_s']:,.0f} words/s ({r['meta_to_gensim']:.2f}x)\n")
        path = write_report("walks", r, md)
        typer.echo(md)
        typer.echo(f"wrote {path}")
