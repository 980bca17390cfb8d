"""Files: atomic writes, safe tensor files (safetensors with checksums), model folders and step files,
the official-checkpoint converter and the COCO-panoptic format."""
