"""Deploy: boards (data), platform plug-ins (host, bare metal, Zephyr), projects, the serial
protocol, ELF size reports and the reference runtimes results are compared with.
"""
