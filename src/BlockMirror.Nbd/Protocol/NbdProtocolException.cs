namespace BlockMirror.Nbd.Protocol;

/// <summary>
/// The peer broke the protocol in a way that leaves the byte stream out of step (a wrong magic, a reply to
/// no request, a payload that cannot be skipped): the only safe answer is to close the connection.
/// </summary>
sealed class NbdProtocolException(string message) : Exception(message);
