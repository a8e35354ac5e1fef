"""The framed serial protocol between the host and a board running a compiled model.

Moving: the module microexport/deploy/protocol.py became this package; `session` still holds all
of it for now and every public name is re-exported here.
"""

from microexport.deploy.protocol.session import *  # noqa: F403
