namespace BlockMirror.Net.Tls;

/// <summary>
/// TLS credentials that cannot be loaded, or a TLS session that failed, in QEMU's words (the file and what is
/// wrong with it; the peer and why it is not trusted).
/// </summary>
public sealed class TlsException(string message, Exception? inner = null) : Exception(message, inner);
