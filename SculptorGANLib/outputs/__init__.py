"""What a run writes: the result folder, report.json, preview.png and its 3D rendering."""
