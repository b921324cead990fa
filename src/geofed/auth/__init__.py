"""Who a client is (X509 with RFC 3820 proxies and VOMS, WLCG tokens, trusted proxy headers) and
what it may do (a deny-by-default policy by path prefix)."""
