// Preload (`node -r ./loopback.cjs …`) for third-party servers that listen on a bare port,
// which Node binds on every interface: such a listen() binds 127.0.0.1 instead, so the
// tests never expose anything beyond loopback. Listens that name a host are left alone.
"use strict";

const net = require("node:net");

const LOOPBACK = "127.0.0.1";
const originalListen = net.Server.prototype.listen;

function isPort(value) {
  return typeof value === "number" || (typeof value === "string" && /^\d+$/.test(value));
}

net.Server.prototype.listen = function listenOnLoopback(...args) {
  if (isPort(args[0]) && typeof args[1] !== "string") {
    args.splice(1, 0, LOOPBACK);
  } else if (args[0] && typeof args[0] === "object" && !args[0].path && args[0].host === undefined
      && !(args[0] instanceof net.Server) && args[0].fd === undefined && args[0]._handle === undefined) {
    args[0] = { ...args[0], host: LOOPBACK };
  }
  return originalListen.apply(this, args);
};
