"""The benchmark's corpus split: whole source songs on one side, the held-out ones halved again."""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_split_keeps_each_song_on_one_side_and_halves_the_held_out_ones(tmp_path):
    rows = []
    for song in range(40):  # 40 source songs of 3 clips each, as make_corpus.py's manifest lists them
        for k in range(3):
            tid = 3 * song + k + 1
            path = f"fma_small/000/{tid:06d}.mp3"
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"clip %d" % tid)
            rows.append({"track_id": tid, "path": path, "source": f"music/song{song}.ogg", "package": "pkg",
                         "start_s": 30.0 * k, "sample_rate": 44100, "channels": 2})
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "split_corpus.py"), str(tmp_path), "--heldout", "0.3"],
                   check=True, capture_output=True)

    def side(name: str) -> dict[str, Path]:
        return {p.name: p for p in (tmp_path / name).rglob("*.mp3")}

    train, heldout, a, b = side("train"), side("heldout"), side("heldout_a"), side("heldout_b")
    assert set(train) | set(heldout) == {Path(r["path"]).name for r in rows}
    assert not set(train) & set(heldout)
    assert set(a) | set(b) == set(heldout) and not set(a) & set(b)
    assert a and b and len(heldout) < len(train)
    song = {Path(r["path"]).name: r["source"] for r in rows}
    for one, other in [(train, heldout), (a, b)]:  # no song has clips on both sides
        assert not {song[n] for n in one} & {song[n] for n in other}
    for p in [*train.values(), *a.values()]:  # links to the clips themselves
        assert p.is_symlink() and p.read_bytes() == b"clip %d" % int(p.stem)


def test_similar_bench_scores_a_ranking_against_each_tracks_kin():
    import importlib.util
    import numpy as np
    spec = importlib.util.spec_from_file_location("similar_bench", ROOT / "benchmarks" / "similar_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    v = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]], np.float32)  # two pairs, one apart
    # each pair's tracks are each other's nearest; the fifth has no label, and is not scored
    assert bench.scores(v, ["A", "A", "B", "B", None], 1) == {"tracks": 4, "p_at_1": 1.0, "map": 1.0, "chance": 0.25}
    assert bench.scores(v, ["A", "B", "A", "B", "C"], 1)["p_at_1"] == 0.0  # nearest of another group
