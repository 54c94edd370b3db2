"""Pure algorithms: congestion control behind one interface (``controllers.base``) and a registry by kind
(``controllers.registry``), and the latency governor's decisions (``controllers.latency``).  Nothing here
knows kernels, processes or sockets: events in, rates, windows and actions out."""
