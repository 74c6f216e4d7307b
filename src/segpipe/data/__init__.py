"""Data: the sources that import image/mask pairs (download), reading and resizing
images, preprocessing into the processed-split store, and batches of it on the
device, normalised as the network takes them."""

# Every mask in the pipeline uses this value for "not labelled, do not score".
IGNORE_INDEX = 255
