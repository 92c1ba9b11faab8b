// The HTTP API, with the operator token on every request (Authorization: Bearer <token>).

const TOKEN_KEY = "taskserver.operatorToken";

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let unauthorized = () => {};

export const getToken = () => token;

export function setToken(value) {
  token = value;
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** ``handler(message)`` runs when the server answers 401 (no token, or a wrong one). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** An answer that is not 2xx: ``status`` (0 when the server was unreachable) and the body ``{message, error_code}``. */
export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/** ``{status, body}`` of a 2xx answer; throws ``HttpError`` for anything else. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new HttpError(0, { message: `无法连接服务器（${error.message}）`, error_code: "NETWORK_ERROR" });
  }
  let answer;
  try {
    answer = await response.json();
  } catch {
    answer = { message: `HTTP ${response.status}`, error_code: `HTTP_${response.status}` };
  }
  if (response.status === 401) unauthorized(answer.message || "令牌无效");
  if (!response.ok) throw new HttpError(response.status, answer);
  return { status: response.status, body: answer };
}

/** A query string of the non-empty values of ``params``. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
