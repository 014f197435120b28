"""Train the demo model: `python -m training --out DIR [--seed N] [--decoder-steps N] [--vision-steps N] [...]`.

Progress bars go to stderr, the loss log to DIR/training_log.txt, a summary to DIR/training.json. The default
options are the ones the committed demo checkpoint (`model/demo_checkpoint/`) was trained with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    defaults = _options_class()()
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint (created)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--decoder-steps", type=int, default=defaults.decoder_steps)
    parser.add_argument("--vision-steps", type=int, default=defaults.vision_steps)
    parser.add_argument("--lm-steps", type=int, default=defaults.lm_steps)
    parser.add_argument("--codebook-pictures", type=int, default=defaults.codebook_pictures)
    parser.add_argument("--generation-pool", type=int, default=defaults.generation_pool)
    parser.add_argument("--guidance-twins", type=float, default=defaults.guidance_twins,
                        help="share of drawing pictures also drawn unprompted, agreeing with their prompted row")
    parser.add_argument("--twins-from", type=float, default=defaults.twins_from,
                        help="share of the joint stage's steps before the twins start (0: from the first step)")
    parser.add_argument("--grid", type=int, default=defaults.grid,
                        help="pixels: the drawing pictures' shapes on this grid (0: anywhere)")
    parser.add_argument("--guidance-steps", type=int, default=defaults.guidance_steps,
                        help="steps of the guidance stage after the joint stage (0: none)")
    parser.add_argument("--resume-guidance", type=Path, default=None, metavar="DIR",
                        help="run only the guidance stage, on DIR: the checkpoint of a run with --guidance-steps 0 "
                             "and otherwise these options")
    parser.add_argument("--check-pictures", type=int, default=defaults.check_pictures,
                        help="held-out pictures for the check after training (0: skip it)")
    args = parser.parse_args(argv)

    from training.pipeline import Options, train_demo  # after the environment is set (see _options_class)

    options = Options(seed=args.seed, decoder_steps=args.decoder_steps, vision_steps=args.vision_steps,
                      lm_steps=args.lm_steps,
                      codebook_pictures=args.codebook_pictures, generation_pool=args.generation_pool,
                      decoded_pool=min(Options().decoded_pool, args.generation_pool),
                      check_pictures=args.check_pictures, guidance_twins=args.guidance_twins,
                      twins_from=args.twins_from, grid=args.grid, guidance_steps=args.guidance_steps)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "training_log.txt"
    if args.resume_guidance:
        from training.pipeline import resume_guidance_stage

        shutil.copyfile(args.resume_guidance / "training_log.txt", log_path)  # the loss log goes on from there
        with open(log_path, "a") as log:
            summary = resume_guidance_stage(args.resume_guidance, args.out, options, log=log)
    else:
        with open(log_path, "w") as log:
            summary = train_demo(args.out, options, log=log)
    print(f"checkpoint written to {args.out} in {summary['timings']['total_s'] / 60:.1f} min", file=sys.stderr)
    for name, value in summary["quick_check"].items():
        print(f"  {name}: {value:.0%}", file=sys.stderr)
    return 0


def _options_class() -> type:
    # Paddle's own ops (they have gradients), and the thread settings, before anything imports paddle.
    os.environ["JANUS_CPU_KERNELS"] = "off"
    from model.runtime_env import apply_runtime_env

    apply_runtime_env()
    from training.pipeline import Options

    return Options


if __name__ == "__main__":
    sys.exit(main())
