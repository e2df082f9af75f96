CREATE TABLE "chat_targets" (
	"job_id" uuid PRIMARY KEY NOT NULL,
	"user_id" uuid NOT NULL,
	"platform" text NOT NULL,
	"target" jsonb NOT NULL,
	"locale" text NOT NULL,
	"delivered_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "link_codes" (
	"code" text PRIMARY KEY NOT NULL,
	"user_id" uuid NOT NULL,
	"platform" text NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "adapters" ADD COLUMN "held_out_photo_id" uuid;--> statement-breakpoint
ALTER TABLE "adapters" ADD COLUMN "sample_keys" jsonb DEFAULT '[]'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "generations" ADD COLUMN "likeness" real;--> statement-breakpoint
ALTER TABLE "photos" ADD COLUMN "phash" text;--> statement-breakpoint
ALTER TABLE "photos" ADD COLUMN "embedding" jsonb;--> statement-breakpoint
ALTER TABLE "photos" ADD COLUMN "face_measures" jsonb;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD CONSTRAINT "chat_targets_job_id_jobs_id_fk" FOREIGN KEY ("job_id") REFERENCES "public"."jobs"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD CONSTRAINT "chat_targets_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "link_codes" ADD CONSTRAINT "link_codes_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "chat_targets_pending" ON "chat_targets" USING btree ("platform") WHERE "chat_targets"."delivered_at" is null;--> statement-breakpoint
CREATE INDEX "link_codes_user" ON "link_codes" USING btree ("user_id");--> statement-breakpoint
ALTER TABLE "adapters" ADD CONSTRAINT "adapters_held_out_photo_id_photos_id_fk" FOREIGN KEY ("held_out_photo_id") REFERENCES "public"."photos"("id") ON DELETE set null ON UPDATE no action;