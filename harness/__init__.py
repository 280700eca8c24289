"""Shared infrastructure below `fictional_knowledge`, `injection` and `analysis`.

Nothing here imports those three packages, so every import in the project runs one way:

    harness  <-  fictional_knowledge  <-  injection
    harness  <-  analysis             <-  injection (the demo and the capacity experiment analyse their runs)

- `errors`: `UserError` (input the user can fix) and the Typer app class that reports it as one line, exit 2;
- `atomic`: writing files and directories so that nothing half-written is ever visible under its final name;
- `tokenizers`: loading tokenizers offline;
- `rundir`: the run-directory format (file names, table schemas, Parquet parts), read and written by one module;
- `paths`: the cache directory and the data files shipped inside the package;
- `progress`: progress bars on terminals, periodic log lines elsewhere (always on stderr).
"""
