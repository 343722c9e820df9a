"""hopr-tunnel agent: runs the data plane of `tunnel/` on a host.

The agent owns everything that touches the host: the config file (config), the
command line (cli), and, added beside them, lifecycle, netlink set-up, the
control socket, logs, metrics and systemd notification. The protocol core in
`tunnel/` never imports from here.
"""
