"""Run a command and write its peak resident memory (KiB, ``RUSAGE_CHILDREN``'s ``ru_maxrss``) to a file.

``python _peak_rss.py OUT_FILE COMMAND...``. A process started straight from the test process would report that
process's memory too (Linux keeps the high-water mark across fork and exec), so this small process starts the command
and measures only its own children. SIGTERM is passed on to the command. Exits with the command's exit code.
"""

import resource
import signal
import subprocess
import sys
from pathlib import Path

child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
code = child.wait()
Path(sys.argv[1]).write_text(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
