"""What every Triton kernel costs on each GPU target, without a GPU: `python bench/kernel_report.py --out DIR`.

Compiles every launch plan the presets make (`kernels.problems`: paper, notebook, demo; fp32, bf16, fp16; with
and without the position embedding, with and without dx) for sm75, sm80, sm89 and sm90 (`kernels.targets`) and
writes DIR/kernel_resources.json (every record) and DIR/kernel_resources.md: registers, stack and local
(spill) bytes, shared memory, theoretical occupancy and what limits it, the bytes each launch moves and the time
that traffic takes at the bandwidth of a T4, an A100, an H100 SXM and an H200 (the floor no kernel beats).

    python bench/kernel_report.py --out DIR [--presets paper demo] [--precisions bf16] [--cc 80 90] [--jobs N]
                                  [--before OLD/kernel_resources.json] [--device]

`--before` adds the occupancy of an earlier report beside each paper/notebook row. `--device` (on a CUDA
machine) also compiles each plan for the GPU at hand through the driver and records the registers and spills
the driver reports beside the cross-compiled ones. Needs only torch and triton.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiling needs compiled @triton.jit functions
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kernels.problems import PRECISIONS, PROBLEMS, all_launches  # noqa: E402
from kernels.targets import ARCHS, TARGETS, check_all, compile_plan, tool_versions  # noqa: E402

BANDWIDTH_GBPS = {"T4": 320, "A100": 1560, "H100 SXM": 3350, "H200": 4800}
H100_SMS = 132  # H100 SXM (the H200 has the same 132 SMs)
GOAL = {"min": 0.25, "target": 0.5, "targets": (80, 90), "presets": ("paper", "notebook")}


def device_records(launches) -> list[dict]:
    """Each plan compiled for this machine's GPU; registers and spills as the driver reports them."""
    cc = int("%d%d" % torch.cuda.get_device_capability())
    out, seen = [], {}
    for la in launches:
        key = (la.plan.name, la.plan.args, la.plan.constexprs, la.plan.num_warps, la.plan.num_stages)
        if key not in seen:
            k = compile_plan(la.plan, cc)
            k._init_handles()
            seen[key] = {"registers": k.n_regs, "spills": k.n_spills, "shared": int(k.metadata.shared)}
        out.append({"id": la.id, "cc": cc, "device": torch.cuda.get_device_name(), **seen[key]})
    return out


# launches whose name changed since the first report: patch_embed's backward was one kernel with dx inside
RENAMED = {"patch_embed.bwd": "patch_embed.bwd-dx", "patch_embed.bwd.dx": "patch_embed.bwd+dx"}


def _before(before: dict, la_id: str, cc: int) -> dict | None:
    if (la_id, cc) in before:
        return before[(la_id, cc)]
    for new, old in RENAMED.items():
        if la_id.endswith(new):
            return before.get((la_id[: -len(new)] + old, cc))
    return None


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if not r["ok"]:
        return "**fails to compile**"
    spill = f", **stack {r['stack']} B**" if r["stack"] or r["local"] else ""
    return f"{r['registers']} r, {r['occupancy']:.0%} ({r['limited_by']}){spill}"


def _rows(records, presets):
    """{row key: {cc: record}} for the launches of `presets`, one row per distinct plan."""
    rows = {}
    for r in records:
        if r["preset"] in presets:
            rows.setdefault((r["op"], r["variant"], r["precision"]), {})[r["cc"]] = r
    return rows


def markdown(report: dict) -> str:
    m, recs = report["meta"], report["records"]
    before = {(r["id"], r["cc"]): r for r in report.get("before_records", [])}
    lines = [f"# Kernel resources: triton {m['versions']['triton']}", "",
             f"- date: {m['date']}", f"- command: `{m['command']}`", f"- commit: {m['commit']}",
             f"- software: torch {m['torch']}, triton {m['versions']['triton']}, ptxas "
             f"{m['versions'].get('ptxas')}, cuobjdump {m['versions'].get('cuobjdump')}, python {m['python']}",
             f"- compiled on: {m['host']} (no GPU needed: `triton.compile` for `GPUTarget('cuda', cc, 32)`)",
             f"- {len(recs)} launch x target records, {sum(not r['ok'] for r in recs)} failed to compile, "
             f"{sum(r['ok'] and (r['stack'] or r['local']) > 0 for r in recs)} with stack or local (spill) bytes; "
             f"compile time {m['seconds']:.0f} s", "",
             "Registers per thread (r), theoretical occupancy (resident warps / the SM's maximum) and the limit that "
             "binds it, per target: sm75 (T4), sm80 (A100), sm89 (L4, RTX 4090), sm90 (H100, H200). Stack bytes are "
             "register spills to local memory. Occupancy is computed from the cubin's registers and shared memory "
             "and the limits in `kernels/targets.py`."
             + (f" The before columns are `{report['before']['file']}` (commit {report['before']['commit']})."
                if report.get("before") else ""), ""]
    ccs = sorted({r["cc"] for r in recs})
    for title, presets in (("paper and notebook", ("paper", "notebook")), ("demo", ("demo",))):
        if not _rows(recs, presets):
            continue
        shapes = PROBLEMS[presets[0]]
        lines += [f"## Occupancy at the {title} plans", "",
                  f"S = {shapes.slices} slices of {shapes.height}x{shapes.width}, patch {shapes.patch}, D = "
                  f"{shapes.dim}, decoder D = {shapes.decoder_dim}, K = {shapes.keep} visible of "
                  f"{shapes.num_patches}.", ""]
        head = "| op | launch | precision | warps | shared B | " + " | ".join(f"sm{cc}" for cc in ccs)
        sep = "|---|---|---|---:|---:|" + "---|" * len(ccs)
        if before and presets[0] == "paper":
            head += " | before sm80 | before sm90"
            sep += "---|---|"
        lines += [head + " |", sep]
        for (op, variant, prec), by_cc in _rows(recs, presets).items():
            any_r = next(iter(by_cc.values()))
            shared = max((r["shared_static"] + r["shared_dynamic"]) for r in by_cc.values() if r["ok"]) \
                if any(r["ok"] for r in by_cc.values()) else "-"
            row = (f"| {op} | {variant} | {prec} | {any_r['plan']['num_warps']} | {shared} | "
                   + " | ".join(_cell(by_cc.get(cc)) for cc in ccs))
            if before and presets[0] == "paper":
                row += " | " + " | ".join(_cell(_before(before, any_r["id"], cc)) for cc in (80, 90))
            lines.append(row + " |")
        lines.append("")
    lines += ["## Traffic floor at the paper shape", "",
              "Bytes one launch must read and write (each once), and the time that takes at the card's peak DRAM "
              "bandwidth (" + ", ".join(f"{k} {v / 1000:g} TB/s" for k, v in BANDWIDTH_GBPS.items()) + "). H100 "
              f"waves: programs / ({H100_SMS} SMs x the blocks an sm90 SM holds at once); below 1, part of the "
              "GPU has no work.", "",
              "| op | launch | precision | grid | H100 waves | MB | " + " | ".join(f"{k} us" for k in BANDWIDTH_GBPS)
              + " |", "|---|---|---|---|---:|---:|" + "---:|" * len(BANDWIDTH_GBPS)]
    for (op, variant, prec), by_cc in _rows(recs, ("paper",)).items():
        p = next(iter(by_cc.values()))["plan"]
        floor = " | ".join(f"{p['bytes_moved'] / (bw * 1e3):.1f}" for bw in BANDWIDTH_GBPS.values())
        programs = 1
        for g in p["grid"]:
            programs *= g
        sm90 = by_cc.get(90)
        waves = f"{programs / (H100_SMS * sm90['blocks_per_sm']):.1f}" if sm90 and sm90["ok"] else "-"
        lines.append(f"| {op} | {variant} | {prec} | {'x'.join(map(str, p['grid']))} | {waves} | "
                     f"{p['bytes_moved'] / 1e6:.2f} | {floor} |")
    short = [r for r in recs if r["ok"] and r["preset"] in GOAL["presets"] and r["cc"] in GOAL["targets"]
             and r["occupancy"] < GOAL["target"]]
    lines += ["", "## Goal", "",
              f"Every forward and backward kernel at the paper and notebook plans at >= {GOAL['target']:.0%} "
              f"theoretical occupancy on sm80 and sm90, never below {GOAL['min']:.0%}: "
              + ("met." if not short else f"{len(short)} records below {GOAL['target']:.0%}: "
                 + ", ".join(sorted({f"{r['op']}.{r['variant']} ({r['precision']}, sm{r['cc']}, "
                                     f"{r['occupancy']:.0%})" for r in short})) + ".")]
    if report.get("notes"):
        lines += [""] + [f"- {n}" for n in report["notes"]]
    if report.get("device"):
        lines += ["", f"## On this machine's GPU ({report['device'][0]['device']}, sm{report['device'][0]['cc']})", "",
                  "| launch | registers | spills | shared B |", "|---|---:|---:|---:|"]
        seen = set()
        for d in report["device"]:
            key = d["id"].split("-", 1)[1]
            if key not in seen:
                seen.add(key)
                lines.append(f"| {d['id']} | {d['registers']} | {d['spills']} | {d['shared']} |")
    return "\n".join(lines) + "\n"


NOTES = [
    "mae_gather, mae_scatter and norm_pix_mse move each byte once and do a few operations per byte; patch_embed "
    "does 2 x 14 FLOPs per output value; all eight kernels are bound by memory traffic, so occupancy matters for "
    "the bytes in flight it keeps, not for arithmetic.",
    "Registers depend on Triton's argument specialization (a scalar equal to 1 becomes a constant, a multiple of "
    "16 gets a divisibility hint): each record is compiled as Triton's launcher compiles that plan for tensors of "
    "the preset's shapes with the strides the engine passes (contiguous), so a compile from a hand-written "
    "signature can differ. Under torch.compile, Inductor launches the same kernels with its own argument analysis.",
    "Compile time above is what this run spent; Triton's on-disk cache skips what an earlier run compiled.",
]


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=20,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "n/a"
    except OSError:  # no git on this machine
        return "n/a"


def _dumps(report: dict) -> str:
    """JSON with one record per line (readable, diffable)."""
    lists = {k: v for k, v in report.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    head = json.dumps({k: v for k, v in report.items() if k not in lists}, indent=1)[:-2]
    parts = [f',\n "{k}": [\n' + ",\n".join("  " + json.dumps(r) for r in v) + "\n ]" for k, v in lists.items()]
    return head + "".join(parts) + "\n}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/kernel_report.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--cc", nargs="+", type=int, default=list(TARGETS), choices=list(ARCHS), help="targets")
    ap.add_argument("--jobs", type=int, default=2, help="compile processes")
    ap.add_argument("--before", type=Path, help="an earlier kernel_resources.json to compare with")
    ap.add_argument("--device", action="store_true", help="also compile for this machine's GPU (needs CUDA)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    launches = [la for la in all_launches(a.presets) if la.precision in a.precisions]
    t = time.perf_counter()
    records = check_all(launches, a.cc, a.jobs)
    commit = _commit()
    report = {"meta": {"date": datetime.date.today().isoformat(),
                       "command": os.environ.get("KERNEL_REPORT_VIA", "python bench/kernel_report.py") + " "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
                       "commit": commit, "versions": tool_versions(), "torch": torch.__version__,
                       "python": platform.python_version(), "host": f"{platform.machine()} CPU, {os.cpu_count()} cores",
                       "seconds": time.perf_counter() - t},
              "archs": {cc: vars(a_) for cc, a_ in ARCHS.items()}, "bandwidth_gbps": BANDWIDTH_GBPS,
              "notes": NOTES, "records": records}
    if a.before:
        keep = ("id", "cc", "ok", "registers", "stack", "local", "occupancy", "limited_by")
        old = json.loads(a.before.read_text())
        report["before"] = {"file": str(a.before), "commit": old["meta"]["commit"]}
        report["before_records"] = [{k: r.get(k) for k in keep} for r in old["records"]]
    if a.device and torch.cuda.is_available():
        report["device"] = device_records(launches)
    (a.out / "kernel_resources.json").write_text(_dumps(report))
    (a.out / "kernel_resources.md").write_text(markdown(report))
    bad = [r for r in records if not r["ok"]]
    print(f"{len(records)} records ({len(bad)} failed to compile) in {report['meta']['seconds']:.0f} s -> "
          f"{a.out}/kernel_resources.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
