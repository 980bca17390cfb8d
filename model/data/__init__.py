"""Data: the COCO-panoptic format on disk, ADE20K / COCO / generated scenes, continual scenarios.

Conventions shared by every module here:
- On disk everything is COCO-panoptic: a JSON with "images", "annotations" (image_id, file_name,
  segments_info [{id, category_id, iscrowd, area, bbox}]) and "categories" [{id, name, isthing, color}],
  plus one PNG per image whose pixel id is R + 256*G + 256^2*B (0 = void).
- `category_id` in files is the dataset's own id (COCO: 1..200 with gaps). Inside the model, classes
  are 1-based in learning order (0 = void); a Scenario maps between the two, once, at the file boundary.
"""
