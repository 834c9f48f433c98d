#!/bin/sh
# The pre-trained SmolLM2-135M on the six converted commonsense sets, one task at a time (eval.json
# accumulates), CPU, fp32, lm-eval's own task definitions (docs/evaluation.md), 0-shot: the
# converted files hold no few-shot (train) split, and results/examples/smollm2-135m-pretrained/
# was measured 0-shot (fedmom's default then; the commonsense default is now 5). Run from the repo root.
set -e
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
fedmom="${FEDMOM:-fedmom}"
$fedmom data convert ../shared/data/commonsense_eval --out results/lm_eval_data --force
for t in openbookqa arc_challenge winogrande piqa social_iqa arc_easy; do
  start=$(date +%s)
  $fedmom eval --model smollm2-135m --task commonsense --tasks $t --data-dir results/lm_eval_data \
    --shots 0 --batch-size 16 --precision fp32 --out results/smollm2-135m-pretrained
  echo "$t: $(( $(date +%s) - start )) s wall"
done
