"""The program torchrun starts: the course's two-phase fine-tuning of any image folder, on N processes.

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --nproc-per-node 2 --max-restarts 3 \\
        -m tl_helpers.distributed_main photos/ --out run/

(the variable makes restarts work: :func:`tl_helpers.distributed.restart_store_warning` says why).
``photos/`` has one subfolder per class (``photos/cats/*.jpg``...). Rank 0 scans it
(:func:`tl_helpers.imagefolder.scan_image_folder`: bad files are skipped and listed) and splits it
(:func:`tl_helpers.imagefolder.split_folder`: stratified, near-duplicates in one part), then hands the
split to every process. Every process extracts the frozen backbone's features of its share (phase 1's
input, gathered on rank 0, which trains the head), and all train phase 2 together
(:func:`tl_helpers.distributed.two_phase_ddp`). Rank 0 writes into ``--out``:

- ``snapshot.pt`` after phase 1 and after every epoch: everything needed to continue. When a process
  fails, torchrun (``--max-restarts N``) stops the others and starts them all again with the same
  arguments; they find the snapshot and resume from the last finished epoch. With several machines, put
  ``--out`` on storage that every machine reads.
- ``model.pt`` at the end: the fine-tuned model with its classes, preprocessing, recipe, histories and test
  report, the format of ``python -m tl_helpers finetune`` (so ``python -m tl_helpers predict run/model.pt
  new.jpg`` uses it).
- ``summary.json``: the histories, the test accuracy, and the throughput when asked for.

Without torchrun, ``python -m tl_helpers.distributed_main photos/`` runs the same program as one process.

>>> args = parser().parse_args(["photos", "--out", "run", "--all-epochs", "2"])
>>> args.folder, args.all_epochs, args.batch_size
('photos', 2, 32)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn

from tl_helpers.distributed import (Dist, all_reduce_max, barrier, broadcast_object, few_steps_warning, gather_objects,
                                    loader_options, median_interval, per_process_batch, predict_sharded,
                                    peak_rss_mb, process_group, restart_count, restart_store_warning, shard, shard_loader, step_times,
                                    threads_per_process, two_phase_ddp)
from tl_helpers.recipe import Recipe

SNAPSHOT, MODEL, SUMMARY = "snapshot.pt", "model.pt", "summary.json"


class SimulatedFailure(RuntimeError):
    """Raised by ``--simulate-failure-after-epoch``: a rehearsal of a crash, to check that the run resumes."""


def parser() -> argparse.ArgumentParser:
    """The command line of the program (every option of :class:`~tl_helpers.recipe.Recipe` is one)."""
    defaults = Recipe()
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N --max-restarts 3 -m tl_helpers.distributed_main",
        description="Fine-tune a pretrained network on an image folder with the course's two-phase recipe, on "
                    "every process torchrun starts (DistributedDataParallel). Rank 0 scans and splits the folder "
                    "and writes the snapshot, the model and the summary into --out; a restarted run resumes from "
                    "the snapshot.")
    p.add_argument("folder", help="folder with one subfolder of images per class")
    p.add_argument("--out", default="ddp_run", help="folder for snapshot.pt, model.pt and summary.json (shared "
                   "storage when several machines train; default: ddp_run)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split over the processes")
    p.add_argument("--val", type=float, default=0.15, help="fraction of the images for validation")
    p.add_argument("--test", type=float, default=0.25, help="fraction of the images for the final test")
    p.add_argument("--min-steps", type=int, default=10,
                   help="warn when an epoch has fewer optimizer steps than this (default: 10)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if there is a GPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: the cores divided by the processes on this machine)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes per process (default: several on CUDA, 0 on the CPU)")
    p.add_argument("--timeout-min", type=float, default=30.0,
                   help="minutes a collective waits for the slowest process before the job fails (default: 30)")
    for f in fields(Recipe):
        if f.name == "seed" or isinstance(getattr(defaults, f.name), bool):
            continue
        kind = float if f.name == "lr_decay" or isinstance(getattr(defaults, f.name), float) else int
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name))
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the split and the training")
    p.add_argument("--throughput-steps", type=int, default=0,
                   help="first time this many training steps on a copy of the model (images/s, median)")
    p.add_argument("--simulate-failure-after-epoch", type=int, default=None, metavar="EPOCH",
                   help="rehearsal: the last process fails after this epoch's snapshot, in the first attempt only "
                        "(with --max-restarts, torchrun then restarts the processes and they resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def recipe_of(args: argparse.Namespace) -> Recipe:
    """The :class:`~tl_helpers.recipe.Recipe` the command line describes."""
    return Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe) if hasattr(args, f.name)})


def run_settings(args: argparse.Namespace, report, parts: dict) -> dict:
    """What defines a run: a snapshot written with other settings is not resumed. The number of processes
    is not among them (the global batch is), so a restart with fewer or more processes continues."""
    files = hashlib.sha256("\n".join(f"{report.relative(p)}|{t}" for p, t in report.samples).encode()).hexdigest()
    return {"folder": Path(args.folder).name, "files": files[:16], "classes": list(report.classes),
            "parts": {k: len(v) for k, v in parts.items()}, "model": args.model, "image_size": args.image_size,
            "batch_size": args.batch_size, "val": args.val, "test": args.test, "recipe": asdict(recipe_of(args))}


def load_snapshot(path: Path, settings: dict) -> dict | None:
    """The snapshot to resume from (every process reads it), or ``None`` when there is none yet."""
    from tl_helpers.checkpoints import settings_diff, settings_hash

    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("settings_hash") != settings_hash(settings):
        raise ValueError(f"{path} belongs to a run with other settings ({settings_diff(state.get('settings', {}), settings)}): "
                         "give another --out, or delete the folder to start again.")
    return state


def sharded_features(backbone: nn.Module, dataset, d: Dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every image of ``dataset``: each process computes its share (on its device, cached
    on disk), then the shares are gathered, in dataset order, in every process."""
    from tl_helpers.data import extract_features

    X, y = extract_features(backbone, shard(dataset, d), device=d.device, progress=False)
    parts = gather_objects((X.cpu(), y.cpu()), d)
    features = torch.empty(len(dataset), X.shape[1], dtype=X.dtype)
    labels = torch.empty(len(dataset), dtype=y.dtype)
    for r, (Xr, yr) in enumerate(parts):
        features[r::d.world_size], labels[r::d.world_size] = Xr, yr
    return features, labels


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 of the model's weights and buffers: equal in every process when DDP kept the copies in step.

    >>> weights_digest(nn.Linear(2, 2)) == weights_digest(nn.Linear(2, 2))
    False
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(args: argparse.Namespace, d: Dist) -> dict:
    """Everything one process does for :func:`main`; returns rank 0's summary (other ranks: an empty dict)."""
    from tl_helpers.checkpoints import settings_hash
    from tl_helpers.data import eval_transform, train_transform
    from tl_helpers.finetuned import FineTuned, TestReport
    from tl_helpers.imagefolder import scan_image_folder, split_folder
    from tl_helpers.models import load_pretrained
    from tl_helpers.surgery import replace_head, set_bn_eval

    torch.set_num_threads(args.threads or threads_per_process(d.local_world_size))
    say = print if d.is_main else (lambda *a, **k: None)
    out = Path(args.out)
    attempt = restart_count() + 1
    say(f"{d.world_size} process{'es' if d.world_size > 1 else ''} ({d.backend or 'no process group'}, "
        f"{d.device.type}), {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''} each; "
        f"batch {args.batch_size} = {d.world_size} x {per_process_batch(args.batch_size, d.world_size)}"
        + (f"; attempt {attempt} (torchrun restarted the processes {attempt - 1} time{'s' if attempt > 2 else ''})"
           if attempt > 1 else ""), flush=True)

    store_warning = restart_store_warning()
    if store_warning:
        say(f"WARNING: {store_warning}", flush=True)
    found = None
    if d.is_main:   # one process reads every file once; the others get the result
        report = scan_image_folder(args.folder, progress=False)
        parts = split_folder(report, val=args.val, test=args.test, seed=args.seed)
        found = (report, parts)
        say(f"{Path(args.folder).name}/: {len(report.samples)} good images in {len(report.classes)} classes, "
            f"{len(report.skipped)} unusable files skipped; split {len(parts['train'])} / {len(parts['val'])} / "
            f"{len(parts['test'])} (train / val / test)", flush=True)
    report, parts = broadcast_object(found, d)
    settings = run_settings(args, report, parts)
    recipe = recipe_of(args)
    warning = few_steps_warning(len(parts["train"]), args.batch_size, d.world_size, recipe.finetune_epochs,
                                args.min_steps)
    if warning:
        say(f"WARNING: {warning}", flush=True)

    resume = load_snapshot(out / SNAPSHOT, settings)
    if resume is not None:
        where = (f"phase '{resume['phase']}', {resume['phase_epoch']} epoch{'s' if resume['phase_epoch'] != 1 else ''} "
                 "done" if resume["phase"] != "head" else "after phase 1")
        say(f"resuming from {out.name}/{SNAPSHOT} ({where}, written by {resume['world_size']} processes)", flush=True)

    torch.manual_seed(args.seed)
    pre = load_pretrained(args.model)
    eval_tf = eval_transform(args.image_size, mean=pre.mean, std=pre.std)
    plain = {k: report.dataset(eval_tf, parts[k]) for k in ("train", "val", "test")}
    augmented = report.dataset(train_transform(args.image_size, mean=pre.mean, std=pre.std), parts["train"])
    options = loader_options(d.device, args.workers, d.local_world_size)
    summary: dict = {"world_size": d.world_size, "threads": torch.get_num_threads(), "device": d.device.type,
                     "backend": d.backend, "batch_size": args.batch_size, "attempt": attempt,
                     "resumed": resume is not None, "settings": settings}

    features = None
    if resume is None:   # phase 1's input: features of the frozen backbone, each process its share
        backbone = copy.deepcopy(pre.model)
        replace_head(backbone, None, head=nn.Identity())
        features = (*sharded_features(backbone, plain["train"], d), *sharded_features(backbone, plain["val"], d))
        del backbone
    if args.throughput_steps:
        probe = set_bn_eval(replace_head(copy.deepcopy(pre.model), len(report.classes)))
        loader = shard_loader(augmented, args.batch_size, d, train=True, seed=args.seed, **options)
        times = step_times(probe, loader, d, steps=args.throughput_steps, accumulate=recipe.accumulate)
        median, low, high = median_interval(times)
        summary["step_seconds"] = times
        summary["images_per_s"] = {"median": args.batch_size / median, "low": args.batch_size / high,
                                   "high": args.batch_size / low}
        del probe
        say(f"throughput: {args.batch_size / median:.1f} images/s (median of {len(times)} steps)", flush=True)

    def progress_line(phase: str, hist) -> None:
        """Rank 0 reports each epoch as it ends; the last process fails here when a failure is rehearsed."""
        if phase == "head":
            if hist.rows:
                say(f"phase 1 on rank 0: {len(hist)} epochs on cached features, val acc {hist.rows[-1]['val_acc']:.1%}; "
                    f"snapshot written", flush=True)
            return
        row = hist.rows[-1]
        say(f"phase 2 {row['phase']} epoch {row['epoch']}: train acc {row['train_acc']:.1%} ({row['train_images']} "
            f"images), val acc {row['val_acc']:.1%} ({row['val_images']} images); snapshot written", flush=True)
        if len(hist) == args.simulate_failure_after_epoch and attempt == 1:
            say(f"rehearsal: process {d.world_size - 1} fails now (--simulate-failure-after-epoch "
                f"{args.simulate_failure_after_epoch})", flush=True)
            barrier(d)   # rank 0 has said so before the failure
            if d.rank == d.world_size - 1:
                raise SimulatedFailure(f"simulated failure after epoch {len(hist)} (--simulate-failure-after-epoch)")

    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    head_history, history = two_phase_ddp(
        pre.model, augmented, plain["val"], features, d, recipe, args.batch_size, progress=not args.no_progress,
        snapshot=out / SNAPSHOT, resume=resume, settings=settings, loader_kwargs=options,
        after_epoch=progress_line)
    model = pre.model
    preds = predict_sharded(model, plain["test"], d, **options)
    identical = len(set(gather_objects(weights_digest(model), d))) == 1
    say(f"the {d.world_size} process{'es hold identical' if d.world_size > 1 else ' holds its'} weights: {identical}")
    peak_mb = all_reduce_max(peak_rss_mb(), d)
    if not d.is_main:
        return {}
    truth = [report.samples[i][1] for i in parts["test"]]
    test = TestReport(list(report.classes), truth, preds, [report.relative(report.samples[i][0]) for i in parts["test"]])
    seen = sorted({hashlib.sha256(Path(report.samples[i][0]).read_bytes()).hexdigest()
                   for k in ("train", "val") for i in parts[k]})
    ft = FineTuned(model.cpu().eval(), list(report.classes), args.model, args.image_size, tuple(pre.mean),
                   tuple(pre.std), recipe, head_history, history, test,
                   {"seed": args.seed, "val": args.val, "test": args.test, "folder": report.root.name,
                    "counts": {k: len(v) for k, v in parts.items()}, "skipped": len(report.skipped),
                    "world_size": d.world_size, "settings_hash": settings_hash(settings)}, seen)
    ft.save(out / MODEL)
    say(f"test {test.headline()}")
    say(f"rank 0 saved {out.name}/{MODEL}")
    summary.update(recipe=asdict(recipe), head_history=head_history.to_dict(), history=history.to_dict(),
                   test_accuracy=test.accuracy, test_images=len(truth), peak_rss_mb=peak_mb,
                   identical_weights=identical)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``torchrun ... -m tl_helpers.distributed_main`` (and of ``python -m ...`` alone)."""
    args = parser().parse_args(argv)
    with process_group(args.device, timeout_s=args.timeout_min * 60) as d:
        per_process_batch(args.batch_size, d.world_size)  # fail early, in every process, with a clear message
        run(args, d)
        barrier(d)
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
