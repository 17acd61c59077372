// The Node baseline of bench/perf.py: the classic tutorial's auth stack, Express +
// jsonwebtoken + node-redis, run the way it is run in production (node cluster, one worker
// per core).
//
//   POST /auth/register {email, password}  -> 201 (argon2id m=19 MiB, t=2, p=1, as Tokenward)
//   POST /auth/login    {email, password}  -> {access_token, refresh_token}
//   POST /auth/refresh  {refresh_token}    -> a new pair; the old refresh token stops working
//   GET  /auth/me       Authorization: Bearer <access token> -> the user, read from Redis
//   GET  /                                 -> "ok" (the stack's own hello-world route)
//
// The paths are Tokenward's so that bench/perf.py drives both with the same wrk scripts.
// As in the tutorial: HS256 with the secrets as crypto KeyObjects, one refresh token per
// user stored in Redis under the user id and compared on refresh, users in Redis hashes.
// Environment: PORT, REDIS_URL, WORKERS (default: the cores), ACCESS_TOKEN_SECRET and
// REFRESH_TOKEN_SECRET (default: random, shared by the workers). Listens on 127.0.0.1 only.
"use strict";

const cluster = require("node:cluster");
const crypto = require("node:crypto");
const os = require("node:os");

const ACCESS_TTL = 600; // seconds, as TOKENWARD_ACCESS_TTL
const REFRESH_TTL = 30 * 24 * 3600;
const ARGON2 = { memoryCost: 19456, timeCost: 2, parallelism: 1 };

if (cluster.isPrimary) {
  const workers = Number(process.env.WORKERS || os.availableParallelism());
  const env = {
    ACCESS_TOKEN_SECRET: process.env.ACCESS_TOKEN_SECRET || crypto.randomBytes(32).toString("hex"),
    REFRESH_TOKEN_SECRET: process.env.REFRESH_TOKEN_SECRET || crypto.randomBytes(32).toString("hex"),
  };
  for (let i = 0; i < workers; i++) cluster.fork(env);
  let stopping = false;
  cluster.on("exit", (worker, code, signal) => {
    if (!stopping) {
      // A benchmark baseline that lost a worker measures something else: stop, loudly.
      console.error(`worker ${worker.process.pid} exited (${signal || code}): stopping`);
      process.exitCode = 1;
      stop();
    } else if (Object.keys(cluster.workers).length === 0) process.exit();
  });
  // Stopped by pid (bench/perf.py): take the workers down before the primary goes.
  const stop = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill("SIGTERM");
    setTimeout(() => process.exit(), 5000).unref();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

async function main() {
  const argon2 = require("argon2");
  const express = require("express");
  const jwt = require("jsonwebtoken");
  const { createClient } = require("redis");

  const accessKey = crypto.createSecretKey(Buffer.from(process.env.ACCESS_TOKEN_SECRET, "hex"));
  const refreshKey = crypto.createSecretKey(Buffer.from(process.env.REFRESH_TOKEN_SECRET, "hex"));
  const redis = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
  redis.on("error", (err) => console.error("redis", err.message));
  await redis.connect();

  const app = express();
  app.disable("x-powered-by");
  app.use(express.json());

  function issue(userId) {
    const access = jwt.sign({ sub: userId }, accessKey, {
      algorithm: "HS256",
      expiresIn: ACCESS_TTL,
    });
    const refresh = jwt.sign({ sub: userId }, refreshKey, {
      algorithm: "HS256",
      expiresIn: REFRESH_TTL,
      jwtid: crypto.randomUUID(),
    });
    return { access, refresh };
  }

  async function sendPair(res, userId) {
    const { access, refresh } = issue(userId);
    await redis.set(`refresh:${userId}`, refresh, { EX: REFRESH_TTL });
    res.json({
      access_token: access,
      refresh_token: refresh,
      token_type: "Bearer",
      expires_in: ACCESS_TTL,
    });
  }

  function authenticate(req, res, next) {
    const header = req.headers.authorization || "";
    const token = header.startsWith("Bearer ") ? header.slice(7) : null;
    if (!token) return res.sendStatus(401);
    try {
      req.user = jwt.verify(token, accessKey, { algorithms: ["HS256"] });
    } catch {
      return res.sendStatus(401);
    }
    return next();
  }

  app.get("/", (req, res) => res.type("text/plain").send("ok"));

  app.post("/auth/register", async (req, res) => {
    const { email, password } = req.body || {};
    if (typeof email !== "string" || typeof password !== "string" || password.length < 8) {
      return res.status(422).json({ error: "email and password (8+ characters) required" });
    }
    const hash = await argon2.hash(password, { type: argon2.argon2id, ...ARGON2 });
    const id = String(await redis.incr("user:next"));
    if (!(await redis.set(`email:${email.toLowerCase()}`, id, { NX: true }))) {
      return res.status(409).json({ error: "email taken" });
    }
    await redis.hSet(`user:${id}`, {
      id,
      email,
      password: hash,
      created_at: new Date().toISOString(),
    });
    return res.status(201).json({ id, email });
  });

  app.post("/auth/login", async (req, res) => {
    const { email, password } = req.body || {};
    if (typeof email !== "string" || typeof password !== "string") return res.sendStatus(400);
    const id = await redis.get(`email:${email.toLowerCase()}`);
    const hash = id && (await redis.hGet(`user:${id}`, "password"));
    if (!hash || !(await argon2.verify(hash, password))) return res.sendStatus(401);
    return sendPair(res, id);
  });

  app.post("/auth/refresh", async (req, res) => {
    const token = req.body && req.body.refresh_token;
    if (typeof token !== "string") return res.sendStatus(400);
    let claims;
    try {
      claims = jwt.verify(token, refreshKey, { algorithms: ["HS256"] });
    } catch {
      return res.sendStatus(401);
    }
    const stored = await redis.get(`refresh:${claims.sub}`);
    if (stored !== token) return res.sendStatus(401);
    return sendPair(res, claims.sub);
  });

  app.get("/auth/me", authenticate, async (req, res) => {
    const user = await redis.hGetAll(`user:${req.user.sub}`);
    if (!user.id) return res.sendStatus(404);
    return res.json({ id: user.id, email: user.email, created_at: user.created_at });
  });

  const port = Number(process.env.PORT || 3000);
  app.listen(port, "127.0.0.1");
}
