"""
C{python -m lbtwist}: the C{lbtwist} command.
"""

from lbtwist.cli.main import main

main()
