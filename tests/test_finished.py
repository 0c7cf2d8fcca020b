"""Re-running a finished conversion returns at once, without an endpoint check or a request; a
changed input, prompt or output-determining setting runs it again."""

import json
import os
import time

from .conftest import convert_args, run_cli, sim_stats, start_sims


def test_a_finished_run_is_not_run_again(tmp_path, demo_set):
    input_path, image_root = demo_set
    out = tmp_path / "out"
    vlm, reasoner = start_sims()
    try:
        args = convert_args(input_path, image_root, out, vlm, reasoner)
        assert run_cli(args).returncode == 0
        first = (out / "manifest.json").read_bytes()
        sent = sim_stats(reasoner)["requests"]
        assert sent > 0
        vlm.stop()  # a finished run needs no endpoint: with the VLM down, an endpoint check would exit 2
        proc = run_cli(args)
        assert proc.returncode == 0, proc.stderr
        assert (out / "manifest.json").read_bytes() == first  # nothing rewritten
        assert sim_stats(reasoner)["requests"] == sent  # no request sent
    finally:
        reasoner.stop()


def test_changes_that_alter_the_output_run_again(tmp_path, demo_set):
    input_path, image_root = demo_set
    out = tmp_path / "out"
    vlm, reasoner = start_sims()
    try:
        args = convert_args(input_path, image_root, out, vlm, reasoner)
        assert run_cli(args).returncode == 0
        wall = json.loads((out / "manifest.json").read_text())["wall_s"]

        def reran(extra=(), touch=False):
            before = json.loads((out / "manifest.json").read_text())["created_unix"], os.stat(out / "manifest.json").st_mtime_ns
            if touch:  # the input file changed (same content, new modification time)
                t = time.time() + 5
                os.utime(input_path, (t, t))
            assert run_cli([*args, *extra]).returncode == 0
            return os.stat(out / "manifest.json").st_mtime_ns != before[1]

        assert not reran(["--vlm-concurrency", "3"])  # operational: same outputs, nothing to do
        assert reran(["--limit", "8"])                # another row set
        assert reran(["--limit", "8"]) is False
        assert reran(["--limit", "8"], touch=True)    # the input changed
        assert reran(["--limit", "8", "--force"])     # asked to
        assert wall > 0
    finally:
        vlm.stop(), reasoner.stop()
