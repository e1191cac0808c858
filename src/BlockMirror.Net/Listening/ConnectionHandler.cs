namespace BlockMirror.Net.Listening;

/// <summary>Serves one accepted connection until it ends or <paramref name="cancellationToken"/> (the listener's stop) fires.</summary>
public delegate Task ConnectionHandler(Stream stream, CancellationToken cancellationToken);
