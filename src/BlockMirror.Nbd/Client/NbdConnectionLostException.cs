namespace BlockMirror.Nbd.Client;

/// <summary>
/// The connection to the server is gone (closed, reset, or out of step with the protocol): the request did
/// not get an answer, and none that follow on this connection will. Distinct from an error the server
/// replied with, so that the driver can connect again and resend instead of failing the request.
/// </summary>
public sealed class NbdConnectionLostException(string message, Exception? inner = null) : IOException(message, inner);
