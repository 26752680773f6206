#!/usr/bin/env bash
# Run the demo: with a display it opens napari; without one it renders under Xvfb
# and writes a screenshot next to the results.
set -euo pipefail
PY="$1"
if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then
    exec "$PY" -m napari_irnet.demo
elif command -v xvfb-run >/dev/null 2>&1; then
    exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m napari_irnet.demo --screenshot
else
    echo "No display and no Xvfb: writing results without a screenshot." >&2
    exec "$PY" -m napari_irnet.demo --no-viewer
fi
