"""The flattened root filesystem: layers applied into a tree, edited, given an /init."""
