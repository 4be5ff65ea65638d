#!/usr/bin/env bash
# One device call: fine-tune PeakNet from the bundled weights, then score the new and the bundled
# weights (float32 and bf16) on the selection and test frames of every simulator.
#   bash .gpu-model/run.sh TRAIN_SECONDS EVAL_SECONDS
set -u
T=${1:-420}; EVAL_T=${2:-170}
cd "$(dirname "$0")"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -m peaknet_serve.training.train --out $OUT/train --steps 100000 --time-limit $T --batch-size 64 \
    --crops-per-frame 32 --workers 15 --lr 1e-3 --warmup 30 --seed 4 --init model_store/peaknet/peaknet.safetensors \
    --artefact-probability 0.3 --coverage --target-snr 4.5 > $OUT/train.log 2>&1
tail -c 600 $OUT/train.log
NEW=$OUT/train/peaknet.yaml; OLD=model_store/peaknet/peaknet.yaml; E=/tmp/evals; mkdir -p $E
ev() { local name=$1; shift; OMP_NUM_THREADS=1 timeout $EVAL_T python3 -m "$@" --device cuda --out $E/$name > $E/$name.log 2>&1; echo "$name rc=$?"; }
PS="--cache pscache"
VPS="--frames 3 --pf8-tune-frames 0 --seed 99 --cell val.cell --cache pscache"
for W in new old; do
  C=$NEW; [ $W = old ] && C=$OLD
  ev val_acc_$W peaknet_serve.eval.evaluate --config $C --frames 4 --first-frame 1000 --dtypes float32 &
  ev val_rob_$W peaknet_serve.eval.independent --config $C --frames 4 --first-frame 1000 --dtypes float32 &
  ev val_ps_$W peaknet_serve.eval.patternsim --config $C $VPS --dtypes float32 &
  if [ $W = new ]; then   # the bundled weights' test reports are committed (benchmarks/results)
    ev acc_$W peaknet_serve.eval.evaluate --config $C --frames 16 --dtypes float32 bfloat16 &
    ev rob_$W peaknet_serve.eval.independent --config $C --frames 8 --dtypes float32 bfloat16 &
  fi
  ev ps_$W peaknet_serve.eval.patternsim --config $C --frames 6 $PS --dtypes float32 bfloat16 &
done
wait
tar czf $OUT/evals.tgz -C /tmp evals
for f in $E/*.log; do echo "== $f"; tail -n 2 $f; done
