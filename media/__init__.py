"""Media I/O the nodes use around the sampler: mp4 files, dubbing sources, soundtracks, face boxes and the
speech front end (waveform -> wav2vec2 features). Imported by ``nodes/`` and ``runs/`` only; the sampling loop never
needs it (``samplers/`` keeps exactly the loop's path)."""
