#!/usr/bin/env bash
# The GPU checks and figures of BENCHMARKS.md ("On a GPU"), in one go on a CUDA
# machine with clipsr installed:  bash benchmarks/gpu.sh [LOG_DIR]
# 1. the CUDA tests (tests/test_cuda.py; they skip on machines without CUDA),
# 2. upscale throughput on the GPU against its forward pass and PIL bicubic, by lane count,
#    and without CUDA graphs,
# 3. decoding and writing in worker processes (upscale's choice on a GPU) against threads,
#    tiny and paper x4, 2048 images, batch 16, side by side (issue #24's targets: end to end
#    at least 40% of the forward pass for tiny, 60% for paper),
# 4. the 1024x1024 x8 tiled image on the GPU.
set -uo pipefail
log=${1:-.}
mkdir -p "$log"
export PYTHONUNBUFFERED=1
speed="python3 benchmarks/upscale_speed.py --device cuda --images 2048 --batch 16 --repeats 3"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log/gpu.txt"
python3 -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cpus', os.cpu_count())" \
    | tee -a "$log/gpu.txt"
python3 -m pytest -q -rs -s tests/test_cuda.py 2>&1 | tee "$log/test_cuda.txt"
$speed --scales 4 --lanes 2 4 8 --no-tile-test 2>&1 | tee "$log/upscale_cuda_x4.txt"
$speed --scales 4 --no-tile-test --eager 2>&1 | tee "$log/upscale_cuda_x4_eager.txt"  # without CUDA graphs
$speed --scales 8 --no-tile-test 2>&1 | tee "$log/upscale_cuda_x8.txt"
$speed --scales 4 --presets paper --precision fp32 --no-tile-test 2>&1 | tee "$log/upscale_cuda_fp32.txt"
for io in threads processes threads processes; do  # alternated: the machine's noise shows
    $speed --scales 4 --presets tiny paper --no-tile-test --io $io 2>&1 | tee -a "$log/upscale_cuda_io.txt"
done
python3 benchmarks/upscale_speed.py --device cuda --presets 2>&1 | tee "$log/tile_cuda.txt"
