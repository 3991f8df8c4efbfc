"""Automatic failover on etcd: an agent beside each node, and the commands that read a group."""
