"""Competition tables, image reading, transforms, datasets and loaders, the image cache, folds and reviewed labels."""

import cv2

# Loader workers are the parallelism: OpenCV's own thread pool would oversubscribe the cores, and
# a pool that exists when a worker is forked can deadlock it (so this is set here, never in a worker).
cv2.setNumThreads(1)
