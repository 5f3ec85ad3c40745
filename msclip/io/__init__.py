"""Every byte msclip reads or writes on disk.

- :mod:`msclip.io.readers`: rasters with their band identity (:func:`read_raster`, :class:`Raster`);
- :mod:`msclip.io.images`: image sets from folders, lists and globs (:func:`list_image_set`);
- :mod:`msclip.io.writers`: the one durable writer (:func:`atomic_write`) and its helpers;
- :mod:`msclip.io.geotiff`: GeoTIFF writers, whole or in row strips;
- :mod:`msclip.io.vrt`: a product's band files stacked into one image (:func:`stack_band_files`);
- :mod:`msclip.io.prefetch`: a run's first files read by a second process while it starts.
- :mod:`msclip.io.tables`: the field separator of a text table (:func:`table_separator`).

The spectral core (:mod:`msclip.spectral`) never reads files; everything downstream receives
arrays whose band names travel with them.
"""

from msclip.io.geotiff import GeoTiffStripWriter, write_geotiff
from msclip.io.images import ImageSet, list_image_set, list_images
from msclip.io.readers import IMAGE_EXTENSIONS, Raster, read_raster, to_chw
from msclip.io.vrt import stack_band_files
from msclip.io.writers import (
    TMP_PREFIX,
    Table,
    atomic_write,
    atomic_write_all,
    check_output,
    commit,
    csv_writer,
    current_umask,
    fsync_dir,
    jsonable,
    temp_path,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "TMP_PREFIX",
    "GeoTiffStripWriter",
    "ImageSet",
    "Raster",
    "Table",
    "atomic_write",
    "atomic_write_all",
    "check_output",
    "commit",
    "csv_writer",
    "current_umask",
    "fsync_dir",
    "jsonable",
    "list_image_set",
    "list_images",
    "read_raster",
    "stack_band_files",
    "temp_path",
    "to_chw",
    "write_bytes",
    "write_csv",
    "write_geotiff",
    "write_json",
    "write_text",
]
