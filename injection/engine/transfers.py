"""What the run's data transfers met: the retries and resumed bodies of reads over http(s), in the manifest."""

from __future__ import annotations

from harness import http
from injection.engine.hooks import Hook


class TransferStatsHook(Hook):
    """Records in the manifest (`data_transfers`) what the process's reads of the data host met, from opening the
    corpus to the run's end: requests, failed attempts by kind (HTTP statuses, connections that failed or were cut
    short, stalls, trickles) and bodies resumed by Range. Absent for a run on local files."""

    name = "data_transfers"

    def on_end(self, run, status):
        seen = http.transfer_stats()
        if seen:
            run.manifest_extra["data_transfers"] = seen
