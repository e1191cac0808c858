namespace BlockMirror.Net.Listening;

/// <summary>
/// Turns a connection's byte stream into the one the protocol speaks over (TLS over the socket, say). The
/// returned stream owns the one given: disposing it closes the connection.
/// </summary>
public delegate ValueTask<Stream> StreamUpgrade(Stream stream, CancellationToken cancellationToken);
