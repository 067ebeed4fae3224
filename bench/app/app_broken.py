"""The benchmark's broken deploy: its import fails after 0.5 s.

The benchmark copies this over app.py and sends HUP, as a deploy of code
that no longer imports would.
"""

import time

time.sleep(0.5)
raise ImportError("simulated broken deploy")
