"""The qdisc tree of one link direction (netem -> htb -> red) as pyroute2 calls, with the netem and RED
encoders pyroute2 lacks, one plugin module per qdisc kind as pyroute2 has them."""
